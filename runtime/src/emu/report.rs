//! What the checks report: [`Finding`]s, and the collector that de-duplicates them.
//!
//! A bug usually fires in many threads and blocks. The collector keeps one finding per
//! (check, instruction) — the one of the lowest block, then the lowest thread, so the
//! result does not depend on which host thread ran which block — and counts the others.

use std::collections::HashMap;
use std::fmt;

use super::isa::Code;

/// The checks the emulator performs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum FindingKind {
    /// A global-memory (slice) access outside the slice.
    GlobalOutOfBounds,
    /// A shared-memory access outside its array (any dimension) or the dynamic shared size.
    SharedOutOfBounds,
    /// A register-array or vector-lane index outside the array.
    LocalOutOfBounds,
    /// Two threads of a block access the same shared byte between two barriers, at least
    /// one of them writing, and not both with atomics.
    SharedRace,
    /// Threads of a block wait at a barrier while others have exited or wait at another.
    BarrierDivergence,
    /// A shuffle reads a lane that is not executing it (exited, elsewhere, or absent).
    InactiveLaneShuffle,
    /// A warp collective's mask names a lane that is not executing it, does not contain the
    /// calling lane, or differs between the lanes.
    WarpMaskMismatch,
    /// A tensor-core instruction (`ldmatrix`, `mma`) executed by fewer than all 32 lanes of
    /// the warp (`.sync.aligned` needs every lane; the missing lanes' operands count as 0),
    /// or a `wgmma` in a block that lacks threads of its warpgroup.
    IncompleteWarp,
    /// A read of shared memory no thread of the block has written.
    UninitializedSharedRead,
    /// A 16-byte vector access or `cp_async` at an address that is not 16-byte aligned
    /// (the GPU traps).
    MisalignedAccess,
    /// An integer division or remainder by zero.
    DivisionByZero,
    /// A `wgmma` accumulator read or written by ordinary code while a `wgmma` on it is in
    /// flight (before the `wgmma_wait` that retires it).
    WgmmaAccumulatorInFlight,
    /// A shared-memory store (ordinary, or a TMA load) to bytes an in-flight `wgmma` reads.
    WgmmaOperandOverwritten,
    /// A read (ordinary or by `wgmma`) or ordinary store of shared bytes a TMA load is still
    /// filling: its barrier phase has not completed.
    TmaPendingAccess,
    /// A `tma_load_2d` with a bad tensor map (not a map, another tensor's, a shape the copy
    /// engine cannot load) or a misaligned destination.
    TmaMisuse,
    /// An mbarrier used uninitialised, initialised with a bad count or mid-phase, given more
    /// arrivals than it expects, or completing more bytes than it was armed for.
    MbarrierMisuse,
    /// An `mbarrier_wait` no thread of the block can ever release.
    MbarrierDeadlock,
}

impl FindingKind {
    /// A short description, as printed in a finding.
    pub fn describe(self) -> &'static str {
        match self {
            FindingKind::GlobalOutOfBounds => "out-of-bounds global access",
            FindingKind::SharedOutOfBounds => "out-of-bounds shared access",
            FindingKind::LocalOutOfBounds => "out-of-bounds register-array access",
            FindingKind::SharedRace => "shared-memory race",
            FindingKind::BarrierDivergence => "barrier divergence",
            FindingKind::InactiveLaneShuffle => "shuffle from an inactive lane",
            FindingKind::WarpMaskMismatch => "warp collective mask mismatch",
            FindingKind::IncompleteWarp => "tensor-core instruction without the whole warp",
            FindingKind::UninitializedSharedRead => "read of uninitialised shared memory",
            FindingKind::MisalignedAccess => "misaligned 16-byte access",
            FindingKind::DivisionByZero => "integer division by zero",
            FindingKind::WgmmaAccumulatorInFlight => "wgmma accumulator used while in flight",
            FindingKind::WgmmaOperandOverwritten => "wgmma operand overwritten while in flight",
            FindingKind::TmaPendingAccess => "access of a TMA destination before its barrier",
            FindingKind::TmaMisuse => "bad TMA load",
            FindingKind::MbarrierMisuse => "mbarrier misuse",
            FindingKind::MbarrierDeadlock => "mbarrier deadlock",
        }
    }
}

/// One problem found while running a kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Which check fired.
    pub kind: FindingKind,
    /// The kernel's name.
    pub kernel: String,
    /// The Rust file of the offending statement (in a device function: that function's file).
    pub file: String,
    /// The Rust source line of the offending statement (in a device function: its line).
    pub line: u32,
    /// The block (x, y, z) of the first thread that hit it.
    pub block: (u32, u32, u32),
    /// The thread (x, y, z) within that block.
    pub thread: (u32, u32, u32),
    /// What happened, with the memory object, indices and the other thread involved.
    pub detail: String,
    /// How many times this check fired at this place, over all threads and blocks.
    pub occurrences: u64,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (b, t) = (self.block, self.thread);
        write!(
            f,
            "kernel `{}` ({}:{}), block ({},{},{}) thread ({},{},{}): {}: {}",
            self.kernel,
            self.file,
            self.line,
            b.0,
            b.1,
            b.2,
            t.0,
            t.1,
            t.2,
            self.kind.describe(),
            self.detail
        )?;
        if self.occurrences > 1 {
            write!(f, " ({} occurrences)", self.occurrences)?;
        }
        Ok(())
    }
}

/// The thread a finding is attributed to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Who {
    pub block: [u32; 3],
    pub block_lin: u64,
    pub thread: [u32; 3],
    pub thread_lin: u32,
}

#[derive(Debug)]
struct Entry {
    who: Who,
    detail: String,
    count: u64,
}

/// Findings of one host thread, one per (check, instruction).
#[derive(Debug, Default)]
pub(crate) struct Findings {
    map: HashMap<(FindingKind, u32), Entry>,
}

impl Findings {
    /// Records a finding at instruction `pc`; `detail` is only built when it is kept.
    pub(crate) fn report(
        &mut self,
        kind: FindingKind,
        pc: usize,
        who: Who,
        detail: impl FnOnce() -> String,
    ) {
        let key = (kind, pc as u32);
        match self.map.get_mut(&key) {
            Some(e) => {
                e.count += 1;
                if (who.block_lin, who.thread_lin) < (e.who.block_lin, e.who.thread_lin) {
                    e.who = who;
                    e.detail = detail();
                }
            }
            None => {
                self.map.insert(
                    key,
                    Entry {
                        who,
                        detail: detail(),
                        count: 1,
                    },
                );
            }
        }
    }

    /// Adds another host thread's findings.
    pub(crate) fn merge(&mut self, other: Findings) {
        for (key, e) in other.map {
            match self.map.get_mut(&key) {
                Some(mine) => {
                    mine.count += e.count;
                    if (e.who.block_lin, e.who.thread_lin)
                        < (mine.who.block_lin, mine.who.thread_lin)
                    {
                        mine.who = e.who;
                        mine.detail = e.detail;
                    }
                }
                None => {
                    self.map.insert(key, e);
                }
            }
        }
    }

    /// The findings, ordered by block, thread, line and check.
    pub(crate) fn into_findings(self, code: &Code, kernel: &str) -> Vec<Finding> {
        let mut v: Vec<(u64, u32, Finding)> = self
            .map
            .into_iter()
            .map(|((kind, pc), e)| {
                let origin = code.origin(pc as usize);
                let detail = match origin.func {
                    0 => e.detail,
                    f => format!(
                        "in device function `{}`: {}",
                        code.funcs
                            .get(f as usize)
                            .map(String::as_str)
                            .unwrap_or("?"),
                        e.detail
                    ),
                };
                let [bx, by, bz] = e.who.block;
                let [tx, ty, tz] = e.who.thread;
                let finding = Finding {
                    kind,
                    kernel: kernel.to_string(),
                    file: code.file(origin.func).to_string(),
                    line: origin.line,
                    block: (bx, by, bz),
                    thread: (tx, ty, tz),
                    detail,
                    occurrences: e.count,
                };
                (e.who.block_lin, e.who.thread_lin, finding)
            })
            .collect();
        v.sort_by(|a, b| {
            (a.0, a.1, a.2.line, a.2.kind, &a.2.detail).cmp(&(
                b.0,
                b.1,
                b.2.line,
                b.2.kind,
                &b.2.detail,
            ))
        });
        v.into_iter().map(|(_, _, f)| f).collect()
    }
}
