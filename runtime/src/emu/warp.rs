//! Warp collectives as rendezvous points.
//!
//! A lane that reaches a shuffle, vote, `activemask` or `sync_warp` stops there. Once no
//! lane of its warp can run any more, the lanes stopped at the same instruction form the
//! *active* set of that collective (lanes that exited, wait at a barrier or at another
//! collective are inactive, as they would be on the GPU), and all their results are
//! computed at once with PTX's lane rules:
//!
//! * `shfl.sync.idx`: source `b & 31`; `bfly`: `lane ^ (b & 31)`; `down`: `lane + (b & 31)`
//!   unless past lane 31; `up`: `lane - (b & 31)` unless below 0 — out of range means the
//!   lane's own value;
//! * ballot/all/any over the active lanes of the caller's mask; `activemask` is the active set.
//!
//! Checked here: a mask that names a lane which is not active, that leaves out the caller,
//! or that differs between lanes ([`FindingKind::WarpMaskMismatch`]); a shuffle whose source
//! lane is not active ([`FindingKind::InactiveLaneShuffle`], the lane gets its own value).
//! The tensor-core instructions (`ldmatrix`, `mma`) rendezvous the same way; `matrix`
//! computes them and checks that the whole warp takes part.

use super::interp::{State, Thread};
use super::isa::{Code, Instr, Reg, ShflMode, WarpOp};
use super::report::{FindingKind, Findings, Who};

/// The lane a shuffle reads, as PTX computes it for a full-width (32) segment.
fn source_lane(mode: ShflMode, lane: u32, b: u32) -> u32 {
    let b = b & 31;
    match mode {
        ShflMode::Idx => b,
        ShflMode::Xor => lane ^ b,
        ShflMode::Down if lane + b <= 31 => lane + b,
        ShflMode::Up if lane >= b => lane - b,
        ShflMode::Down | ShflMode::Up => lane,
    }
}

fn op_name(op: WarpOp) -> &'static str {
    match op {
        WarpOp::Shfl(ShflMode::Idx) => "shfl_sync",
        WarpOp::Shfl(ShflMode::Xor) => "shfl_xor_sync",
        WarpOp::Shfl(ShflMode::Down) => "shfl_down_sync",
        WarpOp::Shfl(ShflMode::Up) => "shfl_up_sync",
        WarpOp::Ballot => "ballot_sync",
        WarpOp::All => "all_sync",
        WarpOp::Any => "any_sync",
        WarpOp::ActiveMask => "activemask",
        WarpOp::SyncWarp => "sync_warp",
    }
}

/// `0-3,7` for a set of lanes.
pub(crate) fn lane_list(bits: u32) -> String {
    let mut parts = Vec::new();
    let mut l = 0u32;
    while l < 32 {
        if bits >> l & 1 == 1 {
            let start = l;
            while l + 1 < 32 && bits >> (l + 1) & 1 == 1 {
                l += 1;
            }
            parts.push(if start == l {
                start.to_string()
            } else {
                format!("{start}-{l}")
            });
        }
        l += 1;
    }
    parts.join(",")
}

/// The warp being resolved.
pub(crate) struct WarpView<'a> {
    pub code: &'a Code,
    /// Its lanes (fewer than 32 in a partial last warp).
    pub lanes: &'a mut [Thread],
    /// Their register frames, one after another.
    pub regs: &'a mut [u64],
    pub frame: usize,
    pub block: [u32; 3],
    pub block_lin: u64,
    pub findings: &'a mut Findings,
    /// The warp's `sync_warp` count.
    pub epoch: &'a mut u32,
}

impl WarpView<'_> {
    pub(crate) fn reg(&self, lane: usize, r: Reg) -> u64 {
        self.regs[lane * self.frame + r as usize]
    }

    pub(crate) fn who(&self, lane: usize) -> Who {
        Who {
            block: self.block,
            block_lin: self.block_lin,
            thread: self.lanes[lane].tid,
            thread_lin: self.lanes[lane].linear,
        }
    }

    /// Where lane `l` is instead of at the collective.
    fn whereabouts(&self, l: u32) -> String {
        let Some(t) = self.lanes.get(l as usize) else {
            return format!("does not exist (this warp has {} lanes)", self.lanes.len());
        };
        let line = self.code.origin(t.pc as usize).line;
        match t.state {
            State::Exited => format!("has exited (line {line})"),
            State::Barrier => format!("waits at sync_threads (line {line})"),
            State::Warp => format!("waits at another warp collective (line {line})"),
            State::MbarWait => format!("waits on an mbarrier (line {line})"),
            State::Ready => "is still running".to_string(),
        }
    }

    /// Groups lanes by where they are: `lanes 16-31 has exited (line 9)`.
    pub(crate) fn describe(&self, bits: u32) -> String {
        let mut groups: Vec<(String, u32)> = Vec::new();
        for l in (0..32).filter(|l| bits >> l & 1 == 1) {
            let w = self.whereabouts(l);
            match groups.iter_mut().find(|(g, _)| *g == w) {
                Some((_, b)) => *b |= 1 << l,
                None => groups.push((w, 1 << l)),
            }
        }
        groups
            .iter()
            .map(|(w, b)| format!("lane(s) {} {w}", lane_list(*b)))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Resolves every collective the warp's lanes wait at; returns the lanes that can run again.
    pub(crate) fn resolve(&mut self) -> Vec<usize> {
        let mut pcs: Vec<u32> = self
            .lanes
            .iter()
            .filter(|t| t.state == State::Warp)
            .map(|t| t.pc)
            .collect();
        pcs.sort_unstable();
        pcs.dedup();
        let mut ready = Vec::new();
        for pc in pcs {
            let members = self
                .lanes
                .iter()
                .enumerate()
                .filter(|(_, t)| t.state == State::Warp && t.pc == pc)
                .fold(0u32, |m, (l, _)| m | 1 << l);
            match self.code.instrs.get(pc as usize).cloned() {
                Some(Instr::Warp {
                    op,
                    dst,
                    mask,
                    val,
                    lane,
                }) => self.collective(pc as usize, op, members, dst, mask, val, lane),
                Some(Instr::Matrix { op, dst, src }) => {
                    self.matrix(pc as usize, op, members, dst, src)
                }
                _ => continue,
            }
            for l in (0..32usize).filter(|l| members >> l & 1 == 1) {
                self.lanes[l].pc += 1;
                self.lanes[l].state = State::Ready;
                ready.push(l);
            }
        }
        ready.sort_unstable();
        ready
    }

    /// Computes a shuffle, vote, `activemask` or `sync_warp` for the lanes `members`.
    #[allow(clippy::too_many_arguments)]
    fn collective(
        &mut self,
        pc: usize,
        op: WarpOp,
        members: u32,
        dst: Reg,
        mask: Reg,
        val: Reg,
        lane: Reg,
    ) {
        self.check_masks(pc, op, members, mask);
        let preds = (0..32)
            .filter(|l| members >> l & 1 == 1 && self.reg(*l, val) != 0)
            .fold(0u32, |m, l| m | 1 << l);
        if op == WarpOp::SyncWarp {
            *self.epoch += 1;
        }
        for l in (0..32usize).filter(|l| members >> l & 1 == 1) {
            let in_mask = members & self.reg(l, mask) as u32;
            let result = match op {
                WarpOp::Shfl(mode) => self.shuffle(pc, l, mode, members, val, lane),
                WarpOp::Ballot => (preds & in_mask) as u64,
                WarpOp::All => (in_mask & !preds == 0) as u64,
                WarpOp::Any => (in_mask & preds != 0) as u64,
                WarpOp::ActiveMask => members as u64,
                WarpOp::SyncWarp => 0,
            };
            self.regs[l * self.frame + dst as usize] = result;
        }
    }

    fn shuffle(
        &mut self,
        pc: usize,
        l: usize,
        mode: ShflMode,
        members: u32,
        val: Reg,
        lane: Reg,
    ) -> u64 {
        let j = source_lane(mode, l as u32, self.reg(l, lane) as u32);
        if j as usize == l || members >> j & 1 == 1 {
            return self.reg(j as usize, val);
        }
        let whereabouts = self.whereabouts(j);
        let who = self.who(l);
        self.findings.report(FindingKind::InactiveLaneShuffle, pc, who, || {
            format!(
                "`{}` in lane {l} reads lane {j}, which {whereabouts}; the lane keeps its own value",
                op_name(WarpOp::Shfl(mode))
            )
        });
        self.reg(l, val)
    }

    fn check_masks(&mut self, pc: usize, op: WarpOp, members: u32, mask: Reg) {
        if op == WarpOp::ActiveMask {
            return;
        }
        let mask_of = |v: &Self, l: usize| match op {
            WarpOp::SyncWarp => u32::MAX,
            _ => v.reg(l, mask) as u32,
        };
        let existing = if self.lanes.len() >= 32 {
            u32::MAX
        } else {
            (1u32 << self.lanes.len()) - 1
        };
        let lanes: Vec<usize> = (0..32).filter(|l| members >> l & 1 == 1).collect();
        let Some(&first) = lanes.first() else {
            return;
        };
        let name = op_name(op);
        let m0 = mask_of(self, first);
        let problem = if let Some(&l) = lanes.iter().find(|&&l| mask_of(self, l) >> l & 1 == 0) {
            Some((
                l,
                format!(
                    "lane {l} calls `{name}` with mask {:#010x}, which does not include the lane itself",
                    mask_of(self, l)
                ),
            ))
        } else if let Some(&l) = lanes.iter().find(|&&l| mask_of(self, l) != m0) {
            Some((
                l,
                format!(
                    "lanes disagree on the mask of `{name}`: lane {first} passes {m0:#010x}, lane {l} passes {:#010x}",
                    mask_of(self, l)
                ),
            ))
        } else {
            let missing = m0 & existing & !members;
            (missing != 0).then(|| {
                (
                    first,
                    format!(
                        "the mask {m0:#010x} of `{name}` names lanes that are not executing it: {}",
                        self.describe(missing)
                    ),
                )
            })
        };
        if let Some((l, detail)) = problem {
            let who = self.who(l);
            self.findings
                .report(FindingKind::WarpMaskMismatch, pc, who, || detail);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptx_lane_rules() {
        assert_eq!(source_lane(ShflMode::Down, 30, 4), 30);
        assert_eq!(source_lane(ShflMode::Down, 3, 4), 7);
        assert_eq!(source_lane(ShflMode::Up, 2, 4), 2);
        assert_eq!(source_lane(ShflMode::Up, 9, 4), 5);
        assert_eq!(source_lane(ShflMode::Xor, 5, 33), 4);
        assert_eq!(source_lane(ShflMode::Idx, 5, 0xffff_ffff), 31);
        assert_eq!(lane_list(0xffff_0001), "0,16-31");
    }
}
