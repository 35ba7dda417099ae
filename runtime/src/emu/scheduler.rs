//! Running a grid: blocks spread over host threads, and inside a block the threads, their
//! warps and their barriers.
//!
//! Inside a block, runnable threads run until they stop (exit, barrier, warp collective).
//! [`Schedule::Deterministic`] runs them in thread order, each until it stops or has run
//! 16384 instructions (then the next one gets its turn, round-robin);
//! [`Schedule::Shuffled`] picks a random runnable thread and runs it for a random slice of
//! 1–64 instructions, so accesses interleave differently on each seed. When nothing can run,
//! warps whose lanes wait at collectives are resolved (`warp`); when none wait there any
//! more, every live thread is at a barrier, which then opens (after a divergence check) and
//! starts a new barrier interval.
//!
//! Blocks are independent except through global memory, so they run in parallel, each host
//! thread taking the next block from a shared counter. A kernel whose result would depend
//! on the order of its global atomics (see `Code::order_sensitive`) runs its blocks one after
//! another instead, in block order (or in a seeded random order when shuffled), so that
//! every schedule is reproducible.
//!
//! [`Schedule::Deterministic`]: super::Schedule::Deterministic
//! [`Schedule::Shuffled`]: super::Schedule::Shuffled

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::check::Shadow;
use super::hopper::HopperBlock;
use super::interp::{self, tid_of, Env, State, Thread, Yield};
use super::isa::Code;
use super::memory::{Global, SharedBytes};
use super::report::{FindingKind, Findings, Who};
use super::warp::WarpView;

/// Instructions a thread runs before the deterministic schedule moves on to the next one
/// (so that a thread spinning on another thread of its block cannot starve it).
const DETERMINISTIC_QUANTUM: u64 = 1 << 14;

/// Largest grid whose block order is shuffled when blocks run one after another.
const MAX_SHUFFLED_ORDER: u64 = 1 << 22;

/// A small deterministic generator (SplitMix64).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Everything that is the same for every block of a launch.
pub(crate) struct Launch<'a, 'g> {
    pub code: &'a Code,
    pub global: &'a Global<'g>,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub checks: bool,
    /// `Some(seed)` for a shuffled schedule.
    pub seed: Option<u64>,
    pub step_limit: u64,
    pub host_threads: usize,
}

/// A thread that ran past the step limit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepLimit {
    pub block: [u32; 3],
    pub block_lin: u64,
    pub thread: [u32; 3],
    pub pc: usize,
}

/// What a grid run produced.
pub(crate) struct GridOutcome {
    pub findings: Findings,
    pub instructions: u64,
    pub step_limit: Option<StepLimit>,
    /// Set when a host thread panicked (a bug in the emulator).
    pub panicked: bool,
}

fn block_index(lin: u64, grid: [u32; 3]) -> [u32; 3] {
    let (gx, gy) = (grid[0].max(1) as u64, grid[1].max(1) as u64);
    [
        (lin % gx) as u32,
        ((lin / gx) % gy) as u32,
        (lin / (gx * gy)) as u32,
    ]
}

/// Runs every block of the launch.
pub(crate) fn run_grid(l: &Launch) -> GridOutcome {
    let blocks = l.grid.iter().map(|&g| g as u64).product::<u64>();
    let serial = l.code.order_sensitive;
    let order: Option<Vec<u64>> = match l.seed {
        Some(seed) if serial && blocks <= MAX_SHUFFLED_ORDER => {
            let mut v: Vec<u64> = (0..blocks).collect();
            let mut rng = Rng::new(seed);
            for i in (1..v.len()).rev() {
                v.swap(i, rng.below(i + 1));
            }
            Some(v)
        }
        _ => None,
    };
    let workers = if serial {
        1
    } else {
        l.host_threads
            .max(1)
            .min(blocks.min(usize::MAX as u64) as usize)
            .max(1)
    };
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut w = Worker::new(l);
                    let mut limit = None;
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed) as u64;
                        if i >= blocks {
                            break;
                        }
                        let lin = order
                            .as_ref()
                            .and_then(|o| o.get(i as usize).copied())
                            .unwrap_or(i);
                        if let Err(e) = w.run_block(lin) {
                            stop.store(true, Ordering::Relaxed);
                            limit = Some(e);
                            break;
                        }
                    }
                    (w.findings, w.instructions, limit)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    });
    let mut out = GridOutcome {
        findings: Findings::default(),
        instructions: 0,
        step_limit: None,
        panicked: false,
    };
    for r in results {
        match r {
            Ok((findings, instructions, limit)) => {
                out.findings.merge(findings);
                out.instructions += instructions;
                if let Some(e) = limit {
                    if out.step_limit.is_none_or(|o| e.block_lin < o.block_lin) {
                        out.step_limit = Some(e);
                    }
                }
            }
            Err(_) => out.panicked = true,
        }
    }
    out
}

/// One host thread's state: a block's threads, registers and shared memory, reused for
/// every block it runs.
struct Worker<'l, 'a, 'g> {
    l: &'l Launch<'a, 'g>,
    threads: Vec<Thread>,
    regs: Vec<u64>,
    frame: usize,
    shared: SharedBytes,
    shadow: Shadow,
    hopper: HopperBlock,
    warp_epochs: Vec<u32>,
    findings: Findings,
    instructions: u64,
}

impl<'l, 'a, 'g> Worker<'l, 'a, 'g> {
    fn new(l: &'l Launch<'a, 'g>) -> Self {
        let n = l.block.iter().product::<u32>();
        let frame = l.code.frame as usize;
        Worker {
            l,
            threads: (0..n).map(|i| Thread::new(tid_of(i, l.block), i)).collect(),
            regs: vec![0; frame * n as usize],
            frame,
            shared: SharedBytes::default(),
            shadow: Shadow::default(),
            hopper: HopperBlock::default(),
            warp_epochs: vec![0; n.div_ceil(32) as usize],
            findings: Findings::default(),
            instructions: 0,
        }
    }

    fn run_block(&mut self, lin: u64) -> Result<(), StepLimit> {
        let block = block_index(lin, self.l.grid);
        for t in &mut self.threads {
            t.restart();
        }
        let bytes = self.l.code.shared_bytes as usize;
        self.shared.reset(bytes);
        if self.l.checks {
            self.shadow.reset(bytes);
        }
        self.hopper.reset(bytes, self.l.code.hopper);
        self.warp_epochs.fill(0);
        let mut rng = self
            .l
            .seed
            .map(|s| Rng::new(s ^ lin.wrapping_mul(0xD1B5_4A32_D192_ED03)));
        let mut epoch = 1u32;
        let mut ready: Vec<usize> = (0..self.threads.len()).collect();
        let result = loop {
            if let Err(e) = self.run_ready(&mut ready, rng.as_mut(), block, lin, epoch) {
                break Err(e);
            }
            ready = self.release_mbarrier_waits();
            if !ready.is_empty() {
                continue;
            }
            ready = self.resolve_warps(block, lin);
            if !ready.is_empty() {
                continue;
            }
            if self.report_deadlock(block, lin) {
                break Ok(());
            }
            ready = (0..self.threads.len())
                .filter(|&i| self.threads[i].state == State::Barrier)
                .collect();
            if ready.is_empty() {
                break Ok(());
            }
            self.check_barrier(&ready, block, lin);
            self.hopper.publish(&self.threads);
            for &i in &ready {
                let t = &mut self.threads[i];
                t.pc += 1;
                t.state = State::Ready;
            }
            epoch += 1;
        };
        self.instructions += self.threads.iter().map(|t| t.steps).sum::<u64>();
        result
    }

    /// Runs the threads of `ready` until none can run; empties `ready`.
    fn run_ready(
        &mut self,
        ready: &mut Vec<usize>,
        mut rng: Option<&mut Rng>,
        block: [u32; 3],
        lin: u64,
        epoch: u32,
    ) -> Result<(), StepLimit> {
        let l = self.l;
        let frame = self.frame;
        let mut env = Env {
            code: l.code,
            global: l.global,
            shared: &mut self.shared,
            hopper: &mut self.hopper,
            shadow: if l.checks {
                Some(&mut self.shadow)
            } else {
                None
            },
            findings: &mut self.findings,
            block,
            block_lin: lin,
            bdim: l.block,
            gdim: l.grid,
            epoch,
            warp_epochs: &self.warp_epochs,
        };
        let mut cursor = 0;
        while !ready.is_empty() {
            let (pos, quantum) = match rng.as_deref_mut() {
                Some(r) => (r.below(ready.len()), 1 + r.below(64) as u64),
                None if cursor < ready.len() => (cursor, DETERMINISTIC_QUANTUM),
                None => {
                    // next round for the threads that used up their slice
                    ready.retain(|&i| self.threads[i].state == State::Ready);
                    cursor = 0;
                    continue;
                }
            };
            let i = ready[pos];
            let t = &mut self.threads[i];
            let regs = &mut self.regs[i * frame..(i + 1) * frame];
            let budget = quantum.min(l.step_limit.saturating_sub(t.steps));
            let y = interp::run(&mut env, t, regs, budget);
            t.state = match y {
                Yield::Preempt if t.steps >= l.step_limit => {
                    return Err(StepLimit {
                        block,
                        block_lin: lin,
                        thread: t.tid,
                        pc: t.pc as usize,
                    })
                }
                Yield::Preempt => State::Ready,
                Yield::Exit => {
                    env.cp_complete(t, None);
                    env.wgmma_retire(t, None);
                    State::Exited
                }
                Yield::Barrier => State::Barrier,
                Yield::Warp => State::Warp,
                Yield::MbarWait => State::MbarWait,
            };
            match (t.state, rng.is_some()) {
                (State::Ready, true) => {}
                (_, true) => {
                    ready.swap_remove(pos);
                }
                (_, false) => cursor += 1,
            }
        }
        ready.clear();
        Ok(())
    }

    /// Resolves the collectives of every warp whose lanes wait at one; the lanes that can
    /// run again, in thread order.
    fn resolve_warps(&mut self, block: [u32; 3], lin: u64) -> Vec<usize> {
        let mut ready = Vec::new();
        let n = self.threads.len();
        for (w, epoch) in self.warp_epochs.iter_mut().enumerate() {
            let range = w * 32..(w * 32 + 32).min(n);
            if !self.threads[range.clone()]
                .iter()
                .any(|t| t.state == State::Warp)
            {
                continue;
            }
            let mut view = WarpView {
                code: self.l.code,
                lanes: &mut self.threads[range.clone()],
                regs: &mut self.regs[range.start * self.frame..range.end * self.frame],
                frame: self.frame,
                block,
                block_lin: lin,
                findings: &mut self.findings,
                epoch,
            };
            ready.extend(view.resolve().into_iter().map(|l| range.start + l));
        }
        ready
    }

    /// The threads blocked in an `mbarrier_wait` whose phase has completed since, made ready
    /// (they run the wait again), in thread order.
    fn release_mbarrier_waits(&mut self) -> Vec<usize> {
        let mut ready = Vec::new();
        for (i, t) in self.threads.iter_mut().enumerate() {
            if t.state != State::MbarWait {
                continue;
            }
            if t.blocked_on
                .is_none_or(|(bar, parity)| self.hopper.released(bar, parity))
            {
                t.state = State::Ready;
                ready.push(i);
            }
        }
        ready
    }

    /// When nothing can run and some threads wait on mbarriers nothing will complete, reports
    /// each such wait as a deadlock and ends the block (the threads at `sync_threads` could
    /// not pass it either); whether it did.
    fn report_deadlock(&mut self, block: [u32; 3], lin: u64) -> bool {
        let code = self.l.code;
        let mut found = false;
        for t in self.threads.iter().filter(|t| t.state == State::MbarWait) {
            found = true;
            let (bar, parity) = t.blocked_on.unwrap_or((0, 0));
            let who = Who {
                block,
                block_lin: lin,
                thread: t.tid,
                thread_lin: t.linear,
            };
            let state = self.hopper.describe(bar);
            let others = self
                .threads
                .iter()
                .filter(|o| o.state == State::MbarWait)
                .count();
            let line = code.origin(t.pc as usize).line;
            self.findings
                .report(FindingKind::MbarrierDeadlock, t.pc as usize, who, || {
                    format!(
                        "mbarrier_wait(parity {parity}) at line {line} can never return: {state}, and no thread of the block can run to complete it ({others} thread(s) blocked in mbarrier waits)"
                    )
                });
        }
        if found {
            for t in &mut self.threads {
                if t.state != State::Exited {
                    t.state = State::Exited;
                }
            }
        }
        found
    }

    /// Every live thread waits at a barrier: report if some exited or wait at another one.
    fn check_barrier(&mut self, waiting: &[usize], block: [u32; 3], lin: u64) {
        let code = self.l.code;
        let first = &self.threads[waiting[0]];
        let pc = first.pc as usize;
        let who = Who {
            block,
            block_lin: lin,
            thread: first.tid,
            thread_lin: first.linear,
        };
        let mut lines: Vec<(u32, usize, [u32; 3])> = Vec::new();
        for &i in waiting {
            let t = &self.threads[i];
            let line = code.origin(t.pc as usize).line;
            match lines.iter_mut().find(|(l, _, _)| *l == line) {
                Some((_, n, _)) => *n += 1,
                None => lines.push((line, 1, t.tid)),
            }
        }
        let exited: Vec<&Thread> = self
            .threads
            .iter()
            .filter(|t| t.state == State::Exited)
            .collect();
        let show = |t: [u32; 3]| format!("({},{},{})", t[0], t[1], t[2]);
        if lines.len() > 1 {
            self.findings
                .report(FindingKind::BarrierDivergence, pc, who, || {
                    let parts: Vec<String> = lines
                        .iter()
                        .map(|(line, n, t)| {
                            format!("{n} at line {line} (e.g. thread {})", show(*t))
                        })
                        .collect();
                    format!(
                        "the threads of the block wait at different sync_threads: {}",
                        parts.join(", ")
                    )
                });
        } else if let Some(e) = exited.first() {
            let (n, line, tid, w) = (
                exited.len(),
                code.origin(e.pc as usize).line,
                e.tid,
                waiting.len(),
            );
            self.findings.report(FindingKind::BarrierDivergence, pc, who, || {
                format!(
                    "{w} thread(s) wait at this sync_threads but {n} thread(s) of the block exited without reaching it (e.g. thread {} at line {line})",
                    show(tid)
                )
            });
        }
    }
}
